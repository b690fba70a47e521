"""The soup every fork now measures, against what the fork already spends on its paths: on the
default network (params.yaml), 3 copies, the uniform soup (one BatchNorm re-estimate on
instability.bn_limit training examples) and its test error, vs the 3 pairs' paths (30 alphas,
train and test, bn=reset) that Algorithm 1 interpolates. The copies' training, which costs more
than both, is left out, so the ratio bounds the soup's share of a fork from above. Target: the
main job at most 10% slower, i.e. this ratio well under 0.1.

    python benchmarks/soup.py [--quick] [--repeats R]
"""

from __future__ import annotations

import statistics
from itertools import combinations

from common import begin, interleaved, median_ratio, timed

from lmctrack.engine.data import load_dataset
from lmctrack.engine.evaluate import evaluate, load_into
from lmctrack.engine.interpolate import linear_path
from lmctrack.engine.models import build_model
from lmctrack.engine.soup import uniform_soup
from lmctrack.engine.state import State


def main() -> None:
    args, params = begin(__doc__)
    inst, data = params.instability, load_dataset(params.data)
    alphas = 6 if args.quick else inst.alphas

    def template(seed: int = 0):
        return build_model(params.model, data.num_classes, data.input_shape, seed)

    copies = [State(template(seed).state_dict()) for seed in range(3)]

    def paths() -> None:
        for a, b in combinations(copies, 2):
            linear_path(
                template(),
                a,
                b,
                data,
                alphas=alphas,
                splits=tuple(inst.splits),
                bn=inst.bn,
                eval_limit=inst.eval_limit,
                bn_limit=inst.bn_limit,
            )

    def soup() -> None:
        model = template()
        load_into(model, uniform_soup(model, copies, data, "cpu", inst.bn_limit))
        evaluate(model, data, "test")

    repeats = args.repeats or 3
    path_s, soup_s = interleaved(lambda: timed(paths)[0], lambda: timed(soup)[0], repeats)
    print(
        f"soup / paths of one fork: {median_ratio(soup_s, path_s):.3f} "
        f"(soup {statistics.median(soup_s):.2f} s, 3 paths {statistics.median(path_s):.2f} s; "
        f"{alphas} alphas, splits {', '.join(inst.splits)}; medians of {repeats} pairs)"
    )


if __name__ == "__main__":
    main()
