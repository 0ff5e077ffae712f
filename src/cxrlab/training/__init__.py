"""Training: the frozen-backbone fast path and (with Lightning) fine-tuning."""
