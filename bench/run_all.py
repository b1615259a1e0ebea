"""Run every benchmark (`make bench`); each prints its figures and ratios."""

from bench import bench_generator


def main() -> None:
    bench_generator.main()


if __name__ == "__main__":
    main()
