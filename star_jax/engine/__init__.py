"""The engine: one decoder, its parameters on a device mesh, and the train step.

It knows no task and no STaR loop (nothing here imports them):

- model_config.py: `ModelConfig` and named presets
- decoder.py: the Flax NNX decoder (Llama family, GPT-J block), full forward and cached decode
- sharding.py, params.py: the mesh, logical-axis partition rules, parameters on their shardings
- batching.py: (prompt, completion) token lists -> packed, loss-masked training rows
- optim.py, train_state.py, trainer.py: AdamW, the jitted sharded train step
- checkpointer.py: orbax save/restore of train states and params onto any mesh
"""
