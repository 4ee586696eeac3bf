"""Training: fine-tuning on CPU and generating a BERT vocab for models trained from scratch."""
