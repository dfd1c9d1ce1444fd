"""Admin API (`/admin/*`): keys and usage. Needs an admin key."""
