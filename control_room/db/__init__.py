"""Everything that talks to PostgreSQL: the migration runner, the shim, the contract store."""
