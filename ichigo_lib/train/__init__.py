"""torchtune glue: model, tokenizer and dataset builders (``_component_``s) and the launcher."""
