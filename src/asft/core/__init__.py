"""Shared basics below every other package: file hashing and the base of typed stage settings."""
