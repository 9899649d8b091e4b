"""The LLM layer: models, PEFT adapters, tasks and templates, objectives, evaluation."""
