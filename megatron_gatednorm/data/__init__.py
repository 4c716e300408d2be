"""Data for the small experiments: an offline English corpus, a tokenizer, Megatron's
indexed dataset (.bin/.idx) and the sample stream the trainers read."""
