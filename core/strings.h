// Small string helpers used by error messages and parsers.
#pragma once

#include <string>
#include <vector>

namespace strata {

// Levenshtein distance (insert, delete, substitute: cost 1 each).
size_t edit_distance(const std::string& a, const std::string& b);

// The candidate closest to `word`, or "" when none is plausibly a typo of it
// (distance more than max(2, |word| / 3)).
std::string closest_match(const std::string& word,
                          const std::vector<std::string>& candidates);

// " did you mean 'x'?" when a close match exists, else "".
std::string did_you_mean(const std::string& word,
                         const std::vector<std::string>& candidates);

std::string join(const std::vector<std::string>& parts,
                 const std::string& sep);
std::vector<std::string> split(const std::string& s, char sep);

// Shortest decimal text that parses back to exactly `v`.
std::string format_double(double v);

// A number for people: five significant digits (0.67509, 130.75, 0.8931);
// format_double is for files that programs read back.
std::string format_metric(double v);

// "1h02m03s" / "2m05s" / "7s".
std::string format_duration(double seconds);

// Text from outside (a client, a file) made safe to log or echo: printable
// ASCII is kept, a backslash and every other byte (control characters,
// newlines, NUL, bytes >= 0x80) become \xNN, and text longer than
// `max_bytes` is cut there with "...(N bytes)" appended. The result is one
// line of printable ASCII of bounded length whatever the input.
std::string printable(const std::string& text, size_t max_bytes = 80);

// printable(text) in single quotes: 'edge-7', 'a\x0aERROR'.
std::string quote(const std::string& text, size_t max_bytes = 80);

}  // namespace strata
