/*! funnelpilot t.js */
(function(w,d,n){var s=d.currentScript,a=s.getAttribute("data-api")||s.src.replace(/\/t\.js([?#].*)?$/,""),
K="funnelpilot.fp",L=location,q=new URLSearchParams(L.search),t=q.get("fp"),S,
off=s.hasAttribute("data-respect-dnt")&&(n.doNotTrack=="1"||n.globalPrivacyControl);
try{S=w.localStorage}catch(e){}
function id(v){t=v;try{off||S.setItem(K,v)}catch(e){}}
function track(e,p){if(off)return;var u={},b;q.forEach(function(v,k){/^utm_[a-z]+$/.test(k)&&(u[k]=v.slice(0,200))});
b=JSON.stringify({event:e,token:t||void 0,path:L.pathname,title:d.title.slice(0,300),referrer:d.referrer.slice(0,2048),utm:u,props:p});
n.sendBeacon&&n.sendBeacon(a+"/collect",b)||fetch(a+"/collect",{method:"POST",body:b,keepalive:!0,credentials:"omit"}).catch(function(){})}
if(t){id(t);q.delete("fp");history.replaceState(history.state,"",L.pathname+(""+q?"?"+q:"")+L.hash)}else try{t=S.getItem(K)}catch(e){}
w.funnelpilot={track:track,identify:id};track("page.viewed")})(window,document,navigator);
