"""Data: prompt sources, templates, the demo task, and the project's tiny tokenizer."""
