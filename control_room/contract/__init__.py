"""The contract as Python: the typed client, its errors and the vocabulary (docs/contract.md).

Importable by everyone (workers, the CLI, agents): it imports nothing else of ours.
"""
