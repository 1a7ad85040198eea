"""Decoding: sampling and stop handling, the two forward steps, THE engine (one decode loop), runs of prompts
through it, and the reduced-precision and CPU weight layouts it serves with."""
