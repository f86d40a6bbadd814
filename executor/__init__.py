"""Stateless workers that claim phases over the contract and run them on the data plane."""
