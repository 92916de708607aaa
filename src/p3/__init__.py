"""P3: policy-driven difficulty, pace-adaptive selection and DPP diversity for LLM fine-tuning.

The library is organised one concept per module; see README.md for the map.
"""

__version__ = "0.1.0"
