"""The jobs: each turns options into artifacts and typed results (infer, evaluate, perf, the whole run,
deploy, their reports, and the transformers-style pipeline). They import every layer below them and print nothing."""
