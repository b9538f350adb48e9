"""The data layer: reading rows from files and encoding them; the LightningDataModules in `data_modules` build on it."""
