// Before the first paint: the theme chosen in the app (light, dark), else the system's.
(function () {
  var choice = null;
  try { choice = localStorage.getItem("chatplane.theme"); } catch (e) { /* storage off */ }
  var dark = choice === "dark" || (choice !== "light" && window.matchMedia("(prefers-color-scheme: dark)").matches);
  document.documentElement.classList.toggle("dark", dark);
})();
