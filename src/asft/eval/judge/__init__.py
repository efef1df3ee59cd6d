"""AlpacaEval 2: a model's outputs judged against reference outputs by a judge model.

`reference`: the shipped evaluation set and reference outputs (sha256-checked); `outputs`: a
generation's outputs in alpaca-eval's format; `annotator`: alpaca-eval's own annotator (its prompt and
parser untouched) pointed at an OpenAI-compatible endpoint; `serve`: an optional local vLLM judge
server; `score`: the score stage's `judge` method (judgements cached across runs, the win rates
computed by alpaca-eval). Nothing here imports alpaca-eval until a judgement is asked for.
"""
