"""Reading labelled structures, splitting, neighbour lists and batching."""
