"""Run every benchmark (`make bench`); each prints its figures and ratios."""

from bench import (
    bench_generator,
    bench_load,
    bench_quality,
    bench_scoring,
    bench_serving,
    bench_training,
)


def main() -> None:
    bench_generator.main()
    bench_scoring.main()
    bench_training.main()
    bench_quality.main()
    bench_serving.main()  # needs wrk (apt-get install wrk); skipped without it
    bench_load.main()  # 10 minutes of mixed load against serve --workers 2 (wrk)


if __name__ == "__main__":
    main()
