"""Reading shots and writing mattes: frame sequences, images, colour, video."""
