/* The one-line reason pair_style mlmd prints for an exception. Header-only, no LAMMPS or torch headers. */

#ifndef MLMD_TEXT_H
#define MLMD_TEXT_H

#include <string>
#include <vector>

namespace mlmd {

/* The line of an exception's message that says what went wrong, never empty:
   - a TorchScript interpreter trace ("The following operation failed in the TorchScript interpreter. ...")
     ends with the model's own error ("builtins.ValueError: atoms 3 and 7 are ..."): that message;
   - otherwise the first line that is not blank (messages may start with a newline);
   - "(no reason given)" when there is none. */
inline std::string first_line(const std::string &text)
{
  std::vector<std::string> lines;
  std::string::size_type start = 0;
  while (start <= text.size()) {
    std::string::size_type end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    const auto first = line.find_first_not_of(" \t\r");
    const auto last = line.find_last_not_of(" \t\r");
    lines.push_back(first == std::string::npos ? std::string() : line.substr(first, last - first + 1));
    start = end + 1;
  }
  const std::string prefix = "builtins.";
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    if (it->compare(0, prefix.size(), prefix) != 0) continue;
    const auto colon = it->find(": ");
    if (colon != std::string::npos && colon + 2 < it->size()) return it->substr(colon + 2);
  }
  for (const auto &line : lines)
    if (!line.empty()) return line;
  return "(no reason given)";
}

}    // namespace mlmd

#endif
