"""Built-in steps. Each module holds one step; heavy imports happen inside run()."""
