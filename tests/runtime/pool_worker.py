"""A stateful worker for the pool tests of every runtime: it counts its own calls."""


class Counter:
    def __init__(self, rank):
        self.rank, self.calls = rank, 0

    def bump(self, by):
        self.calls += by
        return self.rank, self.calls
