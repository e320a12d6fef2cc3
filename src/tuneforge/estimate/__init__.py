"""Plan before you spend: optimizer steps from the real prepared data, and memory per device from config.json."""
