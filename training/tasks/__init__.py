"""Task definitions: what a kind of training run trains, on which data, with which loss and metrics."""
