"""The synthetic demo world: its data, its tokenizer and the tiny models `make demo` trains."""
