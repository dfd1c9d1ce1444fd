"""Admin API (`/admin/*`): keys, usage and deployments. Needs an admin key."""
