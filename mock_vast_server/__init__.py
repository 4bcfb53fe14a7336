"""A VAST-protocol server over local data, for tests, demos and users without VAST."""
