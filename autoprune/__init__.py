"""autoprune."""
