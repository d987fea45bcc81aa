"""`lorakit studio`: the pipeline (data, plan, train, eval, chat, export) as a local web page over the library."""
