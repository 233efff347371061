"""Content negotiation with a short way for what every client sends.

The API renders JSON only. DRF's negotiation parses the Accept header into media types and
matches each against each renderer on every request; a request that accepts anything or
asks for JSON (no `?format=`, no suffix) gets the JSON renderer straight away. Any other
Accept header goes through DRF's own negotiation (a 406 when nothing matches). Likewise a
body sent as exactly the first parser's media type (`application/json`) gets that parser
without parsing the Content-Type header."""

from rest_framework.negotiation import DefaultContentNegotiation

PLAIN = {"", "*/*", "application/json", "application/json, */*", "application/json;q=1.0"}


class JSONFirstNegotiation(DefaultContentNegotiation):
    def select_renderer(self, request, renderers, format_suffix=None):
        accept = request.META.get("HTTP_ACCEPT", "")
        if (
            accept in PLAIN
            and format_suffix is None
            and renderers[0].media_type == "application/json"
            # No query string, no `?format=`: spares building the request's QueryDict.
            and (
                not request.META.get("QUERY_STRING")
                or self.settings.URL_FORMAT_OVERRIDE not in request.query_params
            )
        ):
            return renderers[0], renderers[0].media_type
        return super().select_renderer(request, renderers, format_suffix)

    def select_parser(self, request, parsers):
        if parsers and parsers[0].media_type == request.content_type:
            return parsers[0]  # what DRF's matching picks first
        return super().select_parser(request, parsers)
