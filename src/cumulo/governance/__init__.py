"""Who may call, and what they did: keys and authentication."""
