"""Training: the standard trainer and its separate parts.

One file per concern, as in torchtitan: `objectives` (the loss), `schedule` (lr as a function
of step), `checkpoint` (safetensors + json, no pickle), `metrics` (JSONL), `progress` (what a
person sees), `standard` (the loop that ties them together).
"""
