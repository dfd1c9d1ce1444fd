"""Provider adapters, one module per backend kind (see `base.Provider`)."""
