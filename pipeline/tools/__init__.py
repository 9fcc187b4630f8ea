"""Tools a user calls directly: export (merge an adapter), adapters (many adapters on one base), demo data."""
