"""Export a finished run out of lorakit: merged safetensors, GGUF, an Ollama Modelfile, a clean adapter, the Hub."""
