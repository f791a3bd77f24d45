"""torchtune glue: model, tokenizer and dataset builders (``_component_``s), the launcher,
the stock recipes patched for CPU, resume after a kill and HF export."""
