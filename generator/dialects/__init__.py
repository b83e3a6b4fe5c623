"""Other tools' APIs as thin adapters over the same services, queue and progress rows."""
