"""Toy models of superposition: throughput of batched training on the CPU."""

import torch

from pyfloor.toy import ModelSpec, ToyTask, TrainSettings, stable_seed, train_toy_models


class TrainToyModels:
    """20 Adam steps (batch 512) of every width 1 … 10 for ``groups`` data streams at once."""

    params = [[1, 3, 12], [10, 40]]
    param_names = ["groups", "n_features"]

    def setup(self, groups, n_features):
        torch.set_num_threads(1)
        task = ToyTask(n_features, 0.9)
        self.specs = [
            ModelSpec(task, d, stable_seed("bench", g, d), stable_seed("bench-data", g))
            for g in range(groups)
            for d in range(1, 11)
        ]
        self.settings = TrainSettings(steps=20, batch_size=512)
        train_toy_models(self.specs[:1], TrainSettings(steps=1, batch_size=8))  # first-call set-up

    def time_train_steps(self, groups, n_features):
        train_toy_models(self.specs, self.settings)


class DistillToyStudents:
    """20 distillation steps of students 1 … 10 of three width-10 teachers."""

    def setup(self):
        torch.set_num_threads(1)
        task = ToyTask(40, 0.9)
        self.teachers = train_toy_models(
            [ModelSpec(task, 10, stable_seed("t", s), stable_seed("td", s)) for s in range(3)], TrainSettings(steps=5)
        )
        self.specs = [
            ModelSpec(task, d, stable_seed("s", s, d), stable_seed("sd", s), teacher=s)
            for s in range(3)
            for d in range(1, 11)
        ]
        self.settings = TrainSettings(steps=20, batch_size=512)

    def time_distill_steps(self):
        train_toy_models(self.specs, self.settings, teachers=self.teachers)
