"""Action heads behind one policy interface."""
