"""The stages run one after another as one library call: train -> evaluate -> answer the demo question."""
