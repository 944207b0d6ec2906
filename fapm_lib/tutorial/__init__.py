"""The tutorial's helpers: notebook utilities, the widget explorer, the ablation table."""
