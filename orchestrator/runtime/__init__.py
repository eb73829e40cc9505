"""Runtime machinery the steps share: opening engines and Hugging Face models."""
