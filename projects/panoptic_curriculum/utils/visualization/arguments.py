"""Command-line options shared by the tools that draw pictures."""

__all__ = ["add_picture_arguments"]


def add_picture_arguments(parser) -> None:
    """The drawing options shared by the tools: ``--max-depth`` (metres at the top of the
    depth colour scale) and ``--render-size WIDTH HEIGHT`` (point-cloud renderings)."""
    parser.add_argument(
        "--max-depth",
        type=float,
        default=None,
        help="metres at the top of the depth colour scale (default: each image's maximum)",
    )
    parser.add_argument(
        "--render-size",
        type=int,
        nargs=2,
        default=(640, 480),
        metavar=("WIDTH", "HEIGHT"),
        help="size of the point-cloud renderings in pixels",
    )
