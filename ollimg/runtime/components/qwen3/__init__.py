"""The Qwen3 text encoder (transformers' Qwen3Model): config, key map, torch and MLX modules.

A family asks for the hidden states it conditions on (`outputs`: indices into transformers'
`hidden_states`, 0 being the embeddings); only the layers up to the last of them are built and
loaded, and the chosen states come back concatenated along the feature axis.
"""
