"""llmos.memory: context windows, the pager and the vector store.

Not built yet (the memory issue): until then a process's conversation is kept whole and a
prompt that outgrows the model's window fails with ContextOverflow instead of being cut.
"""
