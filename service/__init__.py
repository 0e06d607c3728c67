"""The long-lived layer: predictor, HTTP app, batching and limits."""
