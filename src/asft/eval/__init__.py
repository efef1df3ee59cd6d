"""The evaluation side: benchmarks, protocols, generation, multiple-choice scoring, grading, the table."""
