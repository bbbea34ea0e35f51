"""Pure rules and codecs about who is asking: identity headers, the access policy, request paths, return-to
URLs, the cookies, bearer tokens and the client's address."""
