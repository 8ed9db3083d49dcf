"""Where text comes from: files, tables, records, prompts, and their validation."""
