"""What `oppsync run --sandbox`, `demo` and `bench` start: simulated vendors, Redis, the stack."""
